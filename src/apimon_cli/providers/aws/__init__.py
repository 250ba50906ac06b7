"""AWS API Gateway (REST APIs): products are usage plans, subscribers are API keys in a usage plan.

``spec`` is the registry entry (imported for --help and validate: no boto3); boto3 is imported by the
modules that talk to AWS when the provider is instantiated."""
