//! The one flow syntax shared by every command that takes a flow.
