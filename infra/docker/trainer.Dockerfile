# The trainer (TypeScript consumer) with the training engine (Python, PyTorch + PEFT), also used
# for the CPU policy server. Builds from the registries alone: Docker Hub's python and node
# images, PyPI (torch from PyPI is the CUDA build: it uses the GPUs compose reserves), npm.
#   docker build -f infra/docker/trainer.Dockerfile -t trajstore-trainer .

# Node comes from the official image; its binary runs on the same Debian release (bookworm).
FROM node:20-bookworm-slim AS node

FROM node AS npm-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node

WORKDIR /app
# The engine's pinned dependencies first: the layer survives source changes.
COPY engine/requirements.txt engine/pyproject.toml ./engine/
RUN python -m venv /app/engine/.venv \
 && /app/engine/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -r engine/requirements.txt
COPY --from=npm-deps /app/node_modules ./node_modules
COPY package.json package-lock.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
COPY configs ./configs
COPY engine ./engine
# What engine/setup.sh does after pip: the engine as a path entry, so `python -m trajstore_engine` works anywhere.
RUN echo /app/engine > "$(/app/engine/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/trajstore_engine.pth" \
 && ln -s /app/bin/trajstore.mjs /usr/local/bin/trajstore \
 && /app/engine/.venv/bin/python -c 'import torch, trajstore_engine; print("torch", torch.__version__)' \
 && trajstore --version

ENV TRAJSTORE_ENGINE_PYTHON=/app/engine/.venv/bin/python \
    PYTHONHASHSEED=0 \
    NODE_ENV=production
CMD ["trajstore", "--help"]
