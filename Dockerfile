# The reconciliation job's image (deploy.sh: gcloud run jobs deploy --source .).
# Only what `metrics-ingest replay` needs: the function's runtime requirements,
# the function's own code (functions/ingest, the very code path the function
# runs) and the command line. No TensorFlow, no pgserver, no emulator.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app/functions:/app

WORKDIR /app
COPY functions/requirements.txt functions/requirements.txt
# tenacity, tqdm and requests: the command line's own (pinned as in requirements.txt).
RUN pip install -r functions/requirements.txt tenacity==9.2.1 tqdm==4.70.1 requests==2.34.2
COPY functions/ functions/
COPY metrics_ingest/ metrics_ingest/

# Not root at run time.
RUN useradd --create-home --uid 10001 replay
USER replay

# `python -m`, not the console script: nothing here is pip-installed as a package.
# deploy.sh passes the subcommand and its flags as the job's --args, e.g.
#   replay gs://BUCKET/PREFIX --since 72h --workers 4 --verbose
ENTRYPOINT ["python", "-m", "metrics_ingest"]
CMD ["replay", "--help"]
