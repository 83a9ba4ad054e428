# A worker image: the same Makefile install as a developer machine.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make install
CMD [".venv/bin/tradelab", "worker"]
