# syntax=docker/dockerfile:1
# alexnet-keras on GPUs: the pinned environment of requirements.txt plus TensorFlow's CUDA
# libraries as pip wheels (requirements-cuda.txt), on the Debian 12 / Python 3.11 platform the
# pins are made and tested for. The host needs only the NVIDIA driver and container toolkit.
#
#   docker build -t alexnet-keras .
#   docker run --gpus all --shm-size=1g -v /data:/data alexnet-keras \
#       train.py --data_dir /data/records --model_dir /data/runs/1
#   docker run alexnet-keras                      # no arguments: the demo (make demo's job)
#   docker build --target validate -t alexnet-keras-validate .   # TFDV, data validation
#
# Any *.py argument runs that script of the project (train.py, evaluate.py,
# export/export_model.py, data/build_tfrecords.py, ...); other commands run as given.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

# === Common base: a non-root user and the project's working folder ===
FROM ${PYTHON_IMAGE} AS base
ARG UV_VERSION
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_SYSTEM_PYTHON=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib
RUN apt-get update \
    && apt-get install --yes --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-deps "uv==${UV_VERSION}" \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash alexnet
WORKDIR /app

# === Training, evaluation, export (the default target) ===
FROM base AS train
COPY requirements.txt requirements-cuda.txt ./
RUN uv pip install --no-deps -r requirements.txt -r requirements-cuda.txt \
    && uv pip check
COPY --chown=alexnet:alexnet . .
RUN uv pip install --no-deps --no-build-isolation . \
    && chmod +x docker/entrypoint.sh \
    && chown alexnet:alexnet /app
USER 1000:1000
ENTRYPOINT ["docker/entrypoint.sh"]
CMD []

# === Data validation (TensorFlow Data Validation needs TensorFlow 2.16: its own image) ===
FROM base AS validate
COPY requirements-validate.txt ./
RUN uv pip install --no-deps -r requirements-validate.txt \
    && uv pip check
COPY --chown=alexnet:alexnet . .
RUN chmod +x docker/entrypoint.sh
USER 1000:1000
ENTRYPOINT ["docker/entrypoint.sh"]
CMD ["data/validate_data.py", "--help"]

# The last stage is what a plain `docker build .` makes: the training image.
FROM train
