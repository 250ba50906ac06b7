"""Azure API Management: products are APIM products with a generated policy, subscribers are subscriptions.

``spec`` is the registry entry (imported for --help and validate: no azure SDK); the SDK is imported by
the modules that talk to Azure when the provider is instantiated."""
