# syntax=docker/dockerfile:1
# One image for every mailish component: the entrypoint is `mailish`, the command picks
# api | worker | operator | migrate (e.g. `docker run IMAGE api`).

ARG PYTHON_VERSION=3.11

# ---- build: a wheel of mailish and its dependencies in a venv ------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/mailish
WORKDIR /src
# Dependencies first (cached while only the source changes).
COPY pyproject.toml README.md ./
RUN mkdir mailish && touch mailish/__init__.py \
    && /opt/mailish/bin/pip install . \
    && /opt/mailish/bin/pip uninstall -y mailish
COPY mailish ./mailish
RUN /opt/mailish/bin/pip install --no-deps . \
    && /opt/mailish/bin/python -m compileall -q /opt/mailish

# ---- runtime: the venv only, no compiler, no pip cache, non-root ---------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="mailish" \
      org.opencontainers.image.description="mailish api / worker / operator / migrate"
RUN groupadd --system --gid 10001 mailish \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mailish
COPY --from=build /opt/mailish /opt/mailish
ENV PATH=/opt/mailish/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAILISH_API_HOST=0.0.0.0 \
    MAILISH_DATA_DIR=/tmp/mailish
WORKDIR /tmp
# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["mailish"]
CMD ["api"]
