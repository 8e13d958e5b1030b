"""A project rule: staff may listen anywhere and also join their team's group."""


def team_rule(request, user, ask):
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return {"allow": True, "groups": [f"user.{ask['params']['user_id']}", "team.7"]}
    return str(user.pk) == ask["params"].get("user_id")
