"""Thin adapters between the domain and the servers (MQTT, XMPP, MySQL)."""
