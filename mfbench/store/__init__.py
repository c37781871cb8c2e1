"""What is kept: the result tables (``results``) and trained snapshots (``snapshots``)."""
