"""Languages of the web console: simplified Chinese (the default) and English.

Catalogs are the gettext ``.po`` files in ``web/locale/<locale>/LC_MESSAGES/``: one file
per area of the console (``messages.po`` for the shared frame and public pages, then e.g.
``merchant_payments.po``, ``staff_reviews.po``) so that areas are translated independently.
They are read once at start with Babel, merged (a message id belongs to one file only), and
compiled into ``babel.support.Translations`` in memory, so a fresh clone needs no compile step
(no ``.mo`` files in the repository or the wheel). Message ids are the English text; the
English catalog may leave a message untranslated (gettext then shows the id).

Also here: the filters every template uses — ``fen`` (``123456`` → ``¥1,234.56``) and
``shanghai`` (an aware instant → ``2026-11-23 10:00`` in Asia/Shanghai).
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from functools import cache
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from shoudan.core.clock import SHANGHAI

LOCALE_DIR = Path(__file__).parent / "locale"
DEFAULT_LOCALE = "zh_CN"
LOCALES = ("zh_CN", "en")
# what a visitor may type in ?lang= → the catalog
LANG_ALIASES = {"zh": "zh_CN", "zh_cn": "zh_CN", "zh-cn": "zh_CN", "en": "en"}
_YUAN = re.compile(r"[0-9]{1,12}(\.[0-9]{1,2})?")
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}


def pick_locale(requested: str | None) -> str | None:
    """A known locale for a ``?lang=`` value or cookie, or ``None``."""
    if not requested:
        return None
    return LANG_ALIASES.get(requested.strip().lower())


@cache
def translations(locale: str) -> Translations:
    """The catalog of ``locale``: every ``.po`` file of the locale merged and compiled in
    memory (once)."""
    merged = Catalog(locale=locale)
    for path in catalog_files(locale):
        with path.open("rb") as po:
            for message in read_po(po, locale=locale):
                if message.id:
                    merged[message.id] = message
    buffer = io.BytesIO()
    write_mo(buffer, merged)
    buffer.seek(0)
    return Translations(fp=buffer)


def catalog_files(locale: str) -> list[Path]:
    return sorted((LOCALE_DIR / locale / "LC_MESSAGES").glob("*.po"))


def N_(message: str) -> str:
    """Marks a message for the catalogs; it is translated where it is shown."""
    return message


def format_fen(amount: int) -> str:
    """Integer fen as yuan: ``123456`` → ``¥1,234.56``, ``-5`` → ``-¥0.05``. Integers only:
    nothing to round, so nothing is rounded."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amounts are integer fen")
    sign = "-" if amount < 0 else ""
    yuan, fen = divmod(abs(amount), 100)
    return f"{sign}¥{yuan:,}.{fen:02d}"


def format_shanghai(moment: datetime | None, with_seconds: bool = False) -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        raise ValueError("times are timezone-aware")
    pattern = "%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M"
    return moment.astimezone(SHANGHAI).strftime(pattern)


def parse_yuan(text: str) -> int | None:
    """A typed amount in yuan (``12``, ``12.5``, ``1,234.56``, ``¥12.00``) as integer fen,
    exactly (no float); ``None`` when it is not a positive amount with at most two decimals."""
    cleaned = text.strip().replace(",", "").replace("¥", "").replace("￥", "")
    if not _YUAN.fullmatch(cleaned):
        return None
    whole, _, decimals = cleaned.partition(".")
    fen = int(whole) * 100 + int(decimals.ljust(2, "0"))
    return fen if fen > 0 else None
