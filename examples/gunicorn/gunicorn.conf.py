"""gunicorn's own console logging, plus an InteraktHandler on the app's "shop" logger.

    INTERAKT_API_KEY=... gunicorn -c examples/gunicorn/gunicorn.conf.py myapp:app

gunicorn merges ``logconfig_dict`` over its defaults one level deep: a ``handlers`` key of yours
replaces all of gunicorn's, while its root logger still names its ``console`` handler ("Unable to
configure root logger"). So this starts from gunicorn's own defaults and adds to them.
Nothing else is needed: each worker sends from its own threads, started by its first tagged
record, and delivers what it queued when it exits (within ``shutdown_timeout``).
"""

import copy

from gunicorn.glogging import CONFIG_DEFAULTS

logconfig_dict = copy.deepcopy(CONFIG_DEFAULTS)
logconfig_dict["handlers"]["interakt"] = {
    "()": "interakt_logging.InteraktHandler",  # key from INTERAKT_API_KEY
    "shutdown_timeout": 5.0,
}
logconfig_dict["loggers"]["shop"] = {"handlers": ["interakt"], "level": "INFO"}

workers = 2
graceful_timeout = 30  # above shutdown_timeout: a stopping worker delivers its queue inside it
