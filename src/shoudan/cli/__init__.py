"""The ``shoudan`` command line (Typer). Commands call services; they hold no business rules."""
