"""gunicorn settings for the web process: ``gunicorn "web:create_app()"`` (see the Procfile)."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '3008')}"
# gthread: slow clients and live log streams hold a thread, not a whole worker process.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
timeout = 120
graceful_timeout = 30
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
