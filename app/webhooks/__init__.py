"""Webhook deliveries: where they may go (:mod:`.targets`) and the worker that renders,
signs and sends them (:mod:`.worker`; the signing itself is in :mod:`contracts.webhooks`)."""
