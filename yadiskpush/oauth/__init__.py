"""
OAuth tokens, shared by the ``yadiskpush`` console script and the daemon.

:mod:`yadiskpush.oauth.tokenfile` reads and writes the token file (JSON, or
the plain first-line token of earlier releases); :mod:`yadiskpush.oauth.client`
talks to Yandex OAuth (the device flow, refreshing) and looks up the login.
"""
