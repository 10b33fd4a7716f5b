"""Settings of the minimal Django example: pyfriction's middleware after AuthenticationMiddleware."""

SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "views"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "pyfriction.integrations.django.FrictionMiddleware",
]
DATABASES: dict = {}  # the demo has no accounts table: the user comes from PYFRICTION["get_user"]
# With real accounts, leave get_user out: request.user is used (request.auser() on async stacks).
PYFRICTION = {"get_user": "views.demo_user"}
