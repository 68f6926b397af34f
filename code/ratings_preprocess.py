"""Preprocessing (seeds 002/003): video reviews -> a cleansed, indexed ratings table.

Reads the reviews TSV files of the `reviews` input (Amazon customer reviews layout:
customer_id, product_id, star_rating, ...), drops the long tail as the blog post does
(customers with fewer than --min-customer-ratings ratings, videos with fewer than
--min-video-ratings), gives each customer and video a sequential index, and writes
/opt/ml/processing/ratings/ratings.csv (customer, video, rating) and dims.json.
"""

import argparse
import glob
import json
import os

import pandas as pd

parser = argparse.ArgumentParser()
parser.add_argument("--min-customer-ratings", type=int, default=5)
parser.add_argument("--min-video-ratings", type=int, default=9)
args = parser.parse_args()

files = sorted(glob.glob("/opt/ml/processing/input/reviews/*.tsv"))
if not files:
    raise SystemExit("no .tsv file in the reviews input")
reviews = pd.concat(pd.read_csv(f, sep="\t", usecols=["customer_id", "product_id", "star_rating"])
                    for f in files)
before = len(reviews)
customers = reviews["customer_id"].value_counts()
videos = reviews["product_id"].value_counts()
reviews = reviews[reviews["customer_id"].isin(customers[customers >= args.min_customer_ratings].index)
                  & reviews["product_id"].isin(videos[videos >= args.min_video_ratings].index)]
customer_index = {c: i for i, c in enumerate(sorted(reviews["customer_id"].unique()))}
video_index = {v: i for i, v in enumerate(sorted(reviews["product_id"].unique()))}
ratings = pd.DataFrame({"customer": reviews["customer_id"].map(customer_index),
                        "video": reviews["product_id"].map(video_index),
                        "rating": reviews["star_rating"].astype(float)})
out = "/opt/ml/processing/ratings"
ratings.to_csv(os.path.join(out, "ratings.csv"), index=False)
dims = {"customers": len(customer_index), "videos": len(video_index), "ratings": len(ratings)}
with open(os.path.join(out, "dims.json"), "w") as f:
    json.dump(dims, f)
print(f"kept {len(ratings)} of {before} ratings: {json.dumps(dims)}")
