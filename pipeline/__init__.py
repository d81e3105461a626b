"""The conductor: settings, the TFX DAG, ML Metadata reads, the local and Kubeflow runners, the report and the CLI."""
