"""Independent statements of the funnel rule that tests check the product against."""
