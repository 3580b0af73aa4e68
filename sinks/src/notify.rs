//! Alarm handlers: delivery of alarm events to Slack, SMTP and webhooks.
