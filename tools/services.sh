#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the integration tests use, when they are installed but not running.
set -u
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if [ -d /etc/postgresql ]; then pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true; fi
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 10); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && echo "postgresql: up" || echo "postgresql: NOT reachable at 127.0.0.1:5432"
redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && echo "redis: up" || echo "redis: NOT reachable at 127.0.0.1:6379"
exit 0
