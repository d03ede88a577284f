# The MLflow tracking server of docker/compose.yaml: the official image plus the PostgreSQL driver (the plain image
# ships without database drivers), installed at build time so the server starts without network access. Runs as a
# non-root user; /mlartifacts (the proxied artifact store, a named volume) belongs to it.
FROM ghcr.io/mlflow/mlflow:v3.17.2

RUN pip install --no-cache-dir psycopg2-binary==2.9.13 \
    && useradd --create-home --uid 10002 --user-group mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

# numeric, so it resolves on the host too (the `mlflow` user above)
USER 10002:10002
