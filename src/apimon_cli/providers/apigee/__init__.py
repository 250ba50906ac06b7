"""Apigee X / hybrid: API products, rate plans (monetization), developers and developer apps.

``spec`` is the registry entry (imported for --help and validate: no google-auth); the HTTP client is
imported by the modules that talk to Apigee when the provider is instantiated."""
