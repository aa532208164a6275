from django.dispatch import Signal

# Sent after commit when an application's configuration in an environment gets a new
# version. Arguments: version (a ConfigurationVersion). The approval workflow listens to
# reopen the gates whose concern (configuration, secret references) changed.
configuration_changed = Signal()
