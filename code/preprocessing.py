# preprocessing.py
import pandas as pd
import os
import json

if __name__ == "__main__":

    with open(f'/opt/ml/processing/input/config/config.json', 'r') as f:
        config = json.load(f)

    step_config = config['steps']['splitor']

    model_df = pd.read_parquet(step_config['data_destination'])
    label = step_config['label_column']

    timestamp_column = step_config['split_strategy']['by']

    for dataset_name, dataset_v in step_config['split_strategy']['datasets'].items():
        if 'range' in dataset_v:
            feature_data = model_df[(model_df[timestamp_column]>=dataset_v['range']['start'])&(model_df[timestamp_column]<=dataset_v['range']['end'])]
        if 'equal' in dataset_v:
            feature_data = model_df[(model_df[timestamp_column]==dataset_v['equal'])]

        label_data = feature_data.pop(label)
        feature_data.pop(timestamp_column)
        contact_data = pd.concat([label_data, feature_data], axis=1)
        output_directory = step_config['outputs'][dataset_name]['source']
        output_path = os.path.join(output_directory, f'{dataset_name}.csv')

        pd.DataFrame(contact_data).to_csv(output_path, header=True, index=False)

