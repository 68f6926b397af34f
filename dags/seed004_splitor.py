"""Seed 004's pipeline, written with smtask: a data source writes parquet with a timestamp
column, then the seed's own ``preprocessing.py`` (unmodified, in ../code) splits it by time
into train and test CSVs. The script reads its settings the seed's way, from
``/opt/ml/processing/input/config/config.json`` under ``steps.splitor``: smtask writes that
file from the step's ``settings`` (seed004_splitor.json, beside this file).

    smtask run dags/seed004_splitor.py
    smtask run dags/seed004_splitor.py -c '{"steps": {"splitor": {"settings": {"split_strategy":
        {"datasets": {"test": {"equal": "2022-06"}}}}}}}'
"""

from __future__ import annotations

import io
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_processing
from smtask.storage import run_prefix, write_bytes

CONFIG = Path(__file__).resolve().parent / "seed004_splitor.json"


@dag(dag_id="seed004_splitor", schedule=None, params=pipeline_params(CONFIG),
     tags=["smtask", "example", "seed-004"])
def seed004_splitor():
    @task(task_id="data-source")
    def data_source() -> str:
        """The seed unloads a Redshift query as parquet; here, a small synthetic table of the
        same shape: feature columns, a label and a month ("YYYY-MM") per row."""
        import numpy as np
        import pandas as pd

        context = get_current_context()
        params = run_params(context)  # deep-merged with the run's conf, and validated
        cfg = params["steps"]["data-source"]
        months = pd.period_range(cfg["start"], cfg["end"], freq="M").strftime("%Y-%m")
        random = np.random.default_rng(cfg["seed"])
        rows = [month for i, month in enumerate(months) for _ in range(3 + i % 4)]
        frame = pd.DataFrame({column: random.normal(size=len(rows)).round(4)
                              for column in cfg["columns"]})
        frame[cfg["label_column"]] = random.integers(0, 2, size=len(rows))
        frame[cfg["timestamp_column"]] = rows
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        folder = run_prefix(context, "data-source")
        write_bytes(f"{folder}/part-0000.parquet", buffer.getvalue(), params)
        return folder

    @sm_processing(step="splitor")
    def splitor(source: str):
        return {"data-source": source}  # lands in settings.data_destination

    splitor(data_source())


seed004_splitor()
