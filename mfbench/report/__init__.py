"""What a person reads: summaries of rows (``summaries``), the plots drawn from the result tables
(``plots``) and the asv dashboard (``dashboard``)."""
