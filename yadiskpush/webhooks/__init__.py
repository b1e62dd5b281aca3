"""
Signed HTTP delivery of notifications, following Standard Webhooks
(https://www.standardwebhooks.com/): the message a push becomes
(:mod:`~yadiskpush.webhooks.message`), its signature
(:mod:`~yadiskpush.webhooks.signing`), one POST of it
(:mod:`~yadiskpush.webhooks.sender`) and when to try again
(:mod:`~yadiskpush.webhooks.retry`). The sink that puts them together is
:class:`~yadiskpush.delivery.sinks.webhook.WebhookSink`.
"""
