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
# The image runs as uid 1000: a mounted /data must be writable by it (docs/docker.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9
# The validation packages published only as C/C++ sources, without wheels for Linux.
ARG NATIVE_PACKAGES=pyfarmhash,crcmod

# === Common base: a non-root user and the project's working folder, owned by it ===
FROM ${PYTHON_IMAGE} AS base
ARG UV_VERSION
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_SYSTEM_PYTHON=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
RUN apt-get update \
    && apt-get install --yes --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-deps "uv==${UV_VERSION}" \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash alexnet \
    && mkdir /app \
    && chown alexnet:alexnet /app
WORKDIR /app

# === Training, evaluation, export (the default target) ===
FROM base AS train
COPY requirements.txt requirements-cuda.txt ./
# --compile-bytecode: user 1000 cannot write .pyc files into the system's site-packages, so
# without them every container start would compile TensorFlow's Python again (seconds).
RUN uv pip install --no-deps --compile-bytecode -r requirements.txt -r requirements-cuda.txt \
    && uv pip check
COPY --chown=alexnet:alexnet . .
# The install's build/ and *.egg-info are by-products owned by root: removed.
RUN uv pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && chmod +x docker/entrypoint.sh
USER 1000:1000
ENTRYPOINT ["docker/entrypoint.sh"]
CMD []

# === Wheels of the validation packages published only as sources ===
# NATIVE_PACKAGES are compiled here, with g++ and Python's headers (the base image has them),
# so that the validate image needs no compiler.
FROM base AS validate-wheels
ARG NATIVE_PACKAGES
COPY requirements-validate.txt ./
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/* \
    && awk -F '==' -v names=",${NATIVE_PACKAGES}," 'index(names, "," $1 ",")' \
        requirements-validate.txt >native.txt \
    && pip wheel --no-deps --wheel-dir /wheels -r native.txt

# === Data validation (TensorFlow Data Validation needs TensorFlow 2.16: its own image) ===
# Installed with the wheels built above, never from their sources: no compiler here.
FROM base AS validate
ARG NATIVE_PACKAGES
COPY --from=validate-wheels /wheels /tmp/wheels
COPY requirements-validate.txt ./
RUN uv pip install --no-deps --compile-bytecode --find-links /tmp/wheels \
        --only-binary "${NATIVE_PACKAGES}" -r requirements-validate.txt \
    && uv pip check \
    && rm -rf /tmp/wheels
COPY --chown=alexnet:alexnet . .
RUN chmod +x docker/entrypoint.sh
USER 1000:1000
ENTRYPOINT ["docker/entrypoint.sh"]
CMD ["data/validate_data.py", "--help"]

# The last stage is what a plain `docker build .` makes: the training image.
FROM train
