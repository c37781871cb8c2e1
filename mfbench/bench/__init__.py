"""The one measuring pipeline: items (``cases``), the call each one times (``subject``), what is measured
(``measure``), the typed result (``measurement``) and the run over a matrix (``runner``)."""
