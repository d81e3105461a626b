# The pipeline image for Kubeflow Pipelines: the project installed, the bundled digits baked in.
#   docker build -t REGISTRY/digits-pipeline:TAG . && docker push REGISTRY/digits-pipeline:TAG
#   python -m pipeline compile --pipeline-root gs://BUCKET/root --image REGISTRY/digits-pipeline:TAG --output digits.json
FROM python:3.10-slim
ENV TF_USE_LEGACY_KERAS=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /pipeline
COPY requirements.txt .
RUN pip install --no-deps -r requirements.txt
COPY pyproject.toml .
COPY pipeline pipeline
COPY components components
COPY models models
COPY serving serving
RUN pip install --no-deps --no-build-isolation . \
 && python -c "from components.ingest.formats import write_digits; write_digits('/pipeline/data/digits')"
