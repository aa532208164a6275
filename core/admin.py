from django.contrib import admin


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Shown for reference; its objects change only through the services that audit them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
