FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY models ./models
COPY orchestration ./orchestration
COPY tasks ./tasks
COPY flowruns_tools ./flowruns_tools
RUN pip install --no-cache-dir '.[monitor]'
USER nobody
CMD ["celery", "-A", "tasks", "worker", "--loglevel", "INFO"]
