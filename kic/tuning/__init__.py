"""Hyperparameter search: the search space and its checks (``space``), the
objective (``objective``), the tuning front door (``settings``), the
strategies (``strategies``, Optuna's samplers), a trial's run and the pick of
the best (``trials``), and the report (``report``). Nothing here knows KFP;
the tuning pipeline (pipelines/tuning_pipeline.py) runs it."""
