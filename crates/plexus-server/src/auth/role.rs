//! Roles and what each route asks of its caller.

use serde::{Deserialize, Serialize};

/// Ordered: each role can do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An agent plugin: calls the engine's plugin service (registration, heartbeats, its
    /// own configuration and cache, approvals for its actions) and nothing else.
    Plugin,
    /// Reads runs, logs, approvals and the audit log.
    Operator,
    /// + starts and cancels runs, manages workflows and schedules, approves MODIFY steps.
    Engineer,
    /// + users, settings, approves ADMIN steps, exports the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Plugin, Role::Operator, Role::Engineer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Plugin => "plugin",
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "plugin" => Some(Role::Plugin),
            "operator" => Some(Role::Operator),
            "engineer" => Some(Role::Engineer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (health, the API document, login).
    Public,
    /// Any signed-in user, whatever the role (their own session and keys).
    Signed,
    /// At least this role.
    Role(Role),
    /// A plugin (the `plugin` role), or an admin.
    Plugin,
}

impl Access {
    /// Whether a caller with `role` (`None`: anonymous) passes.
    pub fn allows(self, role: Option<Role>) -> bool {
        match self {
            Access::Public => true,
            Access::Signed => role.is_some(),
            Access::Role(min) => role.is_some_and(|r| r >= min),
            Access::Plugin => matches!(role, Some(Role::Plugin | Role::Admin)),
        }
    }

    /// Orders rules from the most open to the strictest.
    pub fn strictness(self) -> u8 {
        match self {
            Access::Public => 0,
            Access::Signed => 1,
            Access::Plugin => 2,
            Access::Role(r) => 2 + r as u8,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Access::Public => "anyone".into(),
            Access::Signed => "any signed-in user".into(),
            Access::Role(r) => format!("the {} role or above", r.as_str()),
            Access::Plugin => "the plugin or admin role".into(),
        }
    }
}

/// The role needed to approve a step of this permission (`None`: no approval needed).
pub fn approver_role(permission: plexus_core::manifest::Permission) -> Role {
    use plexus_core::manifest::Permission;
    match permission {
        Permission::Admin => Role::Admin,
        // Steps gated by the mode (manual) with read permission, and MODIFY steps.
        Permission::Read | Permission::Modify => Role::Engineer,
    }
}
