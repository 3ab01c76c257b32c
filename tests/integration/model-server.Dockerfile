# The development model server (serving/, `python -m serving`) as an image, for the
# integration tests only, where tensorflow/serving cannot be pulled
# (tests/integration/dev-model-server.yml). The code is mounted, not copied.
# Built by infra/standins/build.sh from a context holding the two requirement files.
FROM python:3.11.14-slim-bookworm
WORKDIR /build
COPY requirements-demo.txt ./
COPY function/requirements.txt function/
RUN pip install --no-cache-dir --quiet -r requirements-demo.txt
WORKDIR /app
ENV PYTHONPATH=/app:/app/function \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
