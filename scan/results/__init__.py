"""What comes out: ranking, the report, scoring and plots, export, the terminal views and status."""
