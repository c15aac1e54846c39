"""Age-group policies and the decision engine (the only place lists, groups and schedules combine)."""
