#!/usr/bin/env python
"""A minimal Django project with pyfriction: a sign-up form whose email check trips people up.

Run it (one command, from the repository root)::

    python examples/django_app/manage.py runserver      # http://127.0.0.1:8000/signup/?user=u1

``python examples/django_app/manage.py check_friction`` walks a struggling and a smooth user
through it with Django's test client (used by the test suite).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def check_friction() -> None:
    from django.test import Client

    for user, email in (("struggling", "nope"), ("smooth", "ada@example.com")):
        c = Client()
        for _ in range(3 if user == "struggling" else 1):
            c.post("/signup/", {"email": email}, headers={"X-User": user})
        page = c.get("/signup/", headers={"X-User": user}).content.decode()
        shown = ["signup-email"] if 'data-guidance="signup-email"' in page else []
        print(f"{user} user: guidance {shown}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
    if sys.argv[1:2] == ["check_friction"]:
        import django

        django.setup()
        check_friction()
    else:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
