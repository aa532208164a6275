from audit.permissions import is_auditor


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"nav_is_auditor": is_auditor(user)}
