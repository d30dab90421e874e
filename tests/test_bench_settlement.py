"""``shoudan bench settlement`` runs end to end at a tiny size (2,000 payments over 20
merchants, SQLite): it reports its figures and its baseline's, both agree on the money, every
payment is settled and paid out, and the ledger verifies after the seed and after the run. No
timing is asserted: the figures belong to docs/benchmarks.md, not to a test."""

from __future__ import annotations

from shoudan.benchmarks import settlement as bench


def test_the_settlement_benchmark_reports_its_figures_and_the_ledger_verifies() -> None:
    setup, result = list(bench.run(2_000, 20))
    assert (setup["phase"], setup["payments"], setup["merchants"]) == ("setup", 2_000, 20)
    assert setup["capture_entries"] == 20 and setup["ledger_verified"] is True
    assert result["seconds"] > 0 and result["baseline_seconds"] > 0 and result["ratio"] > 0
    assert result["peak_rss_mib"] > 0 and result["baseline_peak_rss_mib"] > 0
    summary = result["summary"]
    assert (summary["status"], summary["merchants"], summary["payments"]) == (
        "completed", 20, 2_000,
    )  # fmt: skip
    assert summary["payouts"] == 20 and summary["blocked"] == 0
    assert summary["payout_amount"] == summary["settled_amount"] > 0
    assert result["baseline_summary"] == {
        "merchants": 20, "payments": 2_000, "settled_amount": summary["settled_amount"],
    }  # fmt: skip
    assert result["totals_agree"] is True
    assert result["ledger_verified"] is True and result["violations"] == 0
    assert result["unsettled_payments_left"] == 0 and result["payout_rows"] == 20
    assert result["rerun_changes_nothing"] is True
