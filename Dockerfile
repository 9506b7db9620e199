# Agent Gateway: one process serving every route (`agent-gateway serve`).
# Build: docker build -t agent-gateway .   Run: docker run -p 8000:8000 --env-file .env agent-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src

# The install steps of `make run`: the locked dependencies, then the package without resolving
# anything again (tests/ops/test_deployment.py runs these same lines).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.lock \
    && /opt/venv/bin/pip install --no-deps .

# Not root; its home holds the default SQLite store and outbox when DATABASE_URL is unset.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/agent-gateway agent-gateway
USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    AGENT_GATEWAY_HOME=/var/lib/agent-gateway \
    HOST=0.0.0.0 \
    PORT=8000
VOLUME ["/var/lib/agent-gateway"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/ping\", timeout=2)"]

# SIGTERM drains: running calls and streams get SHUTDOWN_GRACE_SECONDS (default 30) to finish.
STOPSIGNAL SIGTERM
CMD ["agent-gateway", "serve"]
