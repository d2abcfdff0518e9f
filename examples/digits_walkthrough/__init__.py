"""The walkthrough's example models: `python -m digits_walkthrough DIR`."""
