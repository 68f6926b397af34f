"""Seeds 002/003, a video recommender with factorization machines, written with smtask:

    reviews -> preprocess (processing job) -> prepare RecordIO-protobuf (on the worker)
            -> train, or tune (as the run's `steps.branching.tune` says)
            -> batch transform of the held-out ratings -> evaluate -> clean up

Settings in recommender.json beside this file. The reviews are made up here, in the layout
of the Amazon customer reviews data set the seeds used (customer_id, product_id,
star_rating...), with a few hundred customers instead of two million.

    smtask run dags/recommender.py
    smtask run dags/recommender.py -c '{"steps": {"branching": {"tune": true}}}'
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from smtask import pipeline_params, run_params, sm_processing, sm_training, sm_transform, sm_tuning
from smtask.storage import read_text, remove, run_prefix, write_bytes, write_text

CONFIG = Path(__file__).resolve().parent / "recommender.json"


@dag(dag_id="recommender", schedule=None, params=pipeline_params(CONFIG),
     tags=["smtask", "example", "factorization-machines"])
def recommender():
    @task
    def reviews() -> str:
        """Star ratings of videos by customers, from hidden tastes (a few latent factors),
        plus a long tail of customers and videos with few ratings for preprocess to drop."""
        import numpy as np
        import pandas as pd

        context = get_current_context()
        params = run_params(context)
        cfg = params["steps"]["reviews"]
        rng = np.random.default_rng(cfg["seed"])
        customers, videos = cfg["customers"], cfg["videos"]
        taste, trait = rng.normal(0, 0.8, (customers, 3)), rng.normal(0, 0.8, (videos, 3))
        bias_c, bias_v = rng.normal(0, 0.4, customers), rng.normal(0, 0.4, videos)
        rows = []
        for c in range(customers):
            for v in rng.choice(videos, size=rng.integers(8, 16), replace=False):
                score = 3.4 + bias_c[c] + bias_v[v] + taste[c] @ trait[v] + rng.normal(0, 0.3)
                rows.append((f"C{c:05d}", f"V{v:04d}", int(np.clip(np.rint(score), 1, 5))))
        for t in range(cfg["customers"] // 10):  # the long tail: 1-2 ratings each, some of
            for v in rng.choice(videos + 3, size=rng.integers(1, 3), replace=False):  # 3 rare videos
                rows.append((f"T{t:05d}", f"V{v:04d}", int(rng.integers(1, 6))))
        frame = pd.DataFrame(rows, columns=["customer_id", "product_id", "star_rating"])
        frame.insert(0, "marketplace", "US")
        frame["product_category"] = "Digital_Video_Download"
        folder = run_prefix(context, "reviews", params)
        write_text(f"{folder}/reviews.tsv", frame.to_csv(sep="\t", index=False), params)
        return folder

    @sm_processing(step="preprocess")
    def preprocess(source: str):
        return {"reviews": source}

    @task
    def prepare(cleansed: dict) -> dict:
        """One-hot customer + video features and the star rating as label, split into train
        and test, written as RecordIO-protobuf (the format the algorithm reads), like the
        seed's prepare task on the worker."""
        import numpy as np
        import pandas as pd
        from scipy.sparse import csr_matrix

        from smtask.recordio import write_spmatrix_to_sparse_tensor

        context = get_current_context()
        params = run_params(context)
        cfg, folder = params["steps"]["prepare"], cleansed["outputs"]["ratings"]
        dims = json.loads(read_text(f"{folder}/dims.json", params))
        ratings = pd.read_csv(io.StringIO(read_text(f"{folder}/ratings.csv", params)))
        width = dims["customers"] + dims["videos"]
        declared = int(params["steps"]["trainer"]["hyperparameters"]["feature_dim"])
        if declared != width:
            raise ValueError(f"steps.trainer.hyperparameters.feature_dim is {declared}, but the "
                             f"data has {dims['customers']} customers + {dims['videos']} videos "
                             f"= {width} features")
        test = ratings.sample(frac=cfg["test_fraction"], random_state=cfg["seed"])
        train = ratings.drop(test.index)
        prefix = run_prefix(context, "prepare", params)

        def write(name: str, part: pd.DataFrame, labels: bool = True) -> str:
            rows = np.repeat(np.arange(len(part)), 2)
            columns = np.column_stack([part["customer"], dims["customers"] + part["video"]]).ravel()
            features = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                                  shape=(len(part), width))
            buffer = io.BytesIO()
            label = part["rating"].to_numpy(dtype=np.float32) if labels else None
            write_spmatrix_to_sparse_tensor(buffer, features, label)
            return write_bytes(f"{prefix}/{name}/{name}.protobuf", buffer.getvalue(), params)

        write("train", train), write("test", test), write("batch", test, labels=False)
        write_text(f"{prefix}/labels/test.csv", test["rating"].to_csv(index=False), params)
        return {"prefix": prefix, "train": f"{prefix}/train", "test": f"{prefix}/test",
                "batch": f"{prefix}/batch", "labels": f"{prefix}/labels/test.csv",
                "train_mean": float(train["rating"].mean())}

    @task.branch
    def branching() -> str:
        return "tune" if run_params()["steps"]["branching"]["tune"] else "train"

    @sm_training(step="trainer")
    def train(data: dict):
        return {"train": data["train"], "test": data["test"]}

    @sm_tuning(step="tuner")
    def tune(data: dict):
        return {"train": data["train"], "test": data["test"]}

    # one of train and tune ran, the other was skipped (its value is None)
    @sm_transform(step="transformer", trigger_rule="none_failed_min_one_success")
    def predict(data: dict, trained: dict | None, tuned: dict | None):
        return data["batch"]

    @task
    def evaluate(predictions: dict, data: dict) -> dict:
        """The model's RMSE on the held-out ratings, against always guessing the mean."""
        import numpy as np
        import pandas as pd

        params = run_params()
        truth = pd.read_csv(io.StringIO(read_text(data["labels"], params)))["rating"].to_numpy()
        scores = [p["score"] for line in read_text(predictions["outputs"]["predictions"], params)
                  .splitlines() if line.strip() for p in json.loads(line)["predictions"]]
        if len(scores) != len(truth):
            raise ValueError(f"{len(scores)} predictions for {len(truth)} held-out ratings")
        rmse = float(np.sqrt(np.mean((np.array(scores) - truth) ** 2)))
        baseline = float(np.sqrt(np.mean((data["train_mean"] - truth) ** 2)))
        result = {"metric": "rmse", "value": round(rmse, 4), "mean_baseline": round(baseline, 4),
                  "rows": len(truth)}
        print(f"METRIC {json.dumps(result)}")
        return result

    @task(trigger_rule="all_done")
    def cleanup(data: dict | None) -> int:
        """The prepared RecordIO files are only the algorithm's input: delete them, whatever
        happened to the run (the model, the predictions and the metric stay)."""
        return remove(data["prefix"], run_params()) if data else 0

    data = prepare(preprocess(reviews()))
    trained, tuned = train(data), tune(data)
    branching_ = branching()
    data >> branching_ >> [trained, tuned]
    scored = predict(data, trained, tuned)
    evaluate(scored, data) >> cleanup(data)


recommender()
