"""Settlement (结算): runs, merchant debt, payouts to the merchant's own card, statements."""
