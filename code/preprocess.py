"""Processing script (splitor): split a labelled CSV into train / test / batch sets.

Inputs : /opt/ml/processing/input/data-source/*.csv  (header, one label column)
Outputs: /opt/ml/processing/train/train.csv, /opt/ml/processing/test/test.csv
         (label first, header) and /opt/ml/processing/batch/batch.csv (features only, no
         header: what batch transform scores, row for row with test.csv).
"""

import argparse
import glob
import os

import pandas as pd
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--label-column", default="label")
parser.add_argument("--test-size", type=float, default=0.25)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--input", default="/opt/ml/processing/input/data-source")
parser.add_argument("--output", default="/opt/ml/processing")
args = parser.parse_args()

files = sorted(glob.glob(os.path.join(args.input, "*.csv")))
if not files:
    raise FileNotFoundError(f"no CSV file in {args.input}")
frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
if args.label_column not in frame.columns:
    raise KeyError(f"label column {args.label_column!r} not in {list(frame.columns)[:10]}")

frame = frame[[args.label_column] + [c for c in frame.columns if c != args.label_column]]
train, test = train_test_split(frame, test_size=args.test_size, random_state=args.seed,
                               stratify=frame[args.label_column])
for name, part in (("train", train), ("test", test)):
    os.makedirs(os.path.join(args.output, name), exist_ok=True)
    part.to_csv(os.path.join(args.output, name, f"{name}.csv"), index=False)
os.makedirs(os.path.join(args.output, "batch"), exist_ok=True)
test.drop(columns=[args.label_column]).to_csv(
    os.path.join(args.output, "batch", "batch.csv"), index=False, header=False)
print(f"split {len(frame)} rows: train={len(train)} test={len(test)}")
