"""The facade the wire layers call: inference, metadata, health, repository control."""

from gateway.service.facade import InferenceService

__all__ = ["InferenceService"]
