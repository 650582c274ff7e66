"""What the platform costs: the price table (``prices``), what a run held and what that cost
(``usage``), and recording it on MLflow runs (``record``)."""
