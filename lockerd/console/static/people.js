// Users (create, edit, disable, delete), groups (create, members) and their grants.
import { del, enc, get, patch, post } from "./api.js";
import { knowUsers, moment } from "./format.js";
import { action, badge, button, h, row, table } from "./ui.js";

// Users and groups for pickers and labels; a missing route leaves its list empty.
export async function directory() {
  const [users, groups] = await Promise.all([
    get("api/admin/users").catch(() => []),
    get("api/admin/groups").catch(() => []),
  ]);
  knowUsers(users);
  return { users, groups };
}

export function grantTargets(users, groups) {
  return [
    ...users.map((user) => ({ value: `user:${user.id}`, label: `${user.email}${user.disabled ? " (disabled)" : ""}` })),
    ...groups.map((group) => ({ value: `group:${group.id}`, label: `group ${group.name}` })),
  ];
}

export function targetLabel(entry, users, groups) {
  if (entry.group_id) {
    const group = groups.find((g) => g.id === entry.group_id);
    return `group ${group ? group.name : entry.group_id}`;
  }
  const user = users.find((u) => u.id === entry.user_id);
  return user ? user.email : entry.user_id;
}

// Every compartment of every bank, for the "grant…" pickers.
async function compartmentOptions() {
  const banks = await get("api/admin/locker-banks");
  const options = [];
  for (const bank of [...banks].sort((a, b) => a.name.localeCompare(b.name))) {
    for (const compartment of [...(bank.compartments || [])].sort((a, b) => a.number - b.number)) {
      options.push({ value: compartment.id, label: `${bank.name} · No. ${compartment.number}` });
    }
  }
  return options;
}

const USER_COLUMNS = [
  { label: "Email" },
  { label: "Name" },
  { label: "Role" },
  { label: "State" },
  { label: "Created", nowrap: true, narrow: true },
  { label: "Actions" },
];

const GROUP_COLUMNS = [
  { label: "Group" },
  { label: "Members" },
  { label: "Actions" },
];

export function peopleView(container) {
  const users = h("div#users");
  const groups = h("div#groups");
  container.replaceChildren(h("div.grid", {},
    h("section.card", { "aria-labelledby": "users-title" },
      h("div.head", {}, h("h2#users-title", { text: "Users" }), h("span.spacer"),
        button("New user", createUser, { name: "new-user" })),
      users),
    h("section.card", { "aria-labelledby": "groups-title" },
      h("div.head", {}, h("h2#groups-title", { text: "Groups" }), h("span.spacer"),
        button("New group", createGroup, { name: "new-group" })),
      groups)));

  let known = { users: [], groups: [] };

  async function load() {
    let userList;
    try {
      userList = await get("api/admin/users");
    } catch (error) {
      users.replaceChildren(h("p.error", { text: `Cannot list users: ${error.message}` }));
      userList = null;
    }
    const groupList = await get("api/admin/groups").catch((error) => {
      groups.replaceChildren(h("p.error", { text: `Cannot list groups: ${error.message}` }));
      return null;
    });
    known = { users: userList || [], groups: groupList || [] };
    knowUsers(known.users);
    if (userList) renderUsers(userList);
    if (groupList) renderGroups(groupList);
  }

  function renderUsers(list) {
    const sorted = [...list].sort((a, b) => a.email.localeCompare(b.email));
    users.replaceChildren(table(USER_COLUMNS, sorted.map((user) => row(USER_COLUMNS, [
      user.email,
      user.name,
      user.role,
      user.disabled ? badge("bad", "disabled") : badge("ok", "active"),
      moment(user.created_at),
      h("div.actions", {},
        button("Edit", () => editUser(user), { name: "edit-user", kind: "small quiet" }),
        button(user.disabled ? "Enable" : "Disable", () => setDisabled(user, !user.disabled), { name: "disable-user", kind: "small quiet" }),
        button("Grant…", () => grantTo({ user_id: user.id }, user.email), { name: "grant-user", kind: "small quiet" }),
        button("Delete", () => deleteUser(user), { name: "delete-user", kind: "small danger" })),
    ], { class: user.disabled ? "off" : null, dataset: { userId: user.id, email: user.email } })), { id: "user-table", empty: "No users yet." }));
  }

  function renderGroups(list) {
    const byId = new Map(known.users.map((user) => [user.id, user]));
    const sorted = [...list].sort((a, b) => a.name.localeCompare(b.name));
    groups.replaceChildren(table(GROUP_COLUMNS, sorted.map((group) => row(GROUP_COLUMNS, [
      group.name,
      group.members.length
        ? h("ul.kvs", {}, group.members.map((id) => h("li.kv", { dataset: { userId: id } },
          h("span.v", { text: byId.get(id)?.email || id }),
          button("×", () => removeMember(group, id), { name: "remove-member", kind: "small quiet", title: "Remove from the group" }))))
        : h("span.hint", { text: "no members" }),
      h("div.actions", {},
        button("Add member", () => addMember(group), { name: "add-member", kind: "small quiet" }),
        button("Grant…", () => grantTo({ group_id: group.id }, `group ${group.name}`), { name: "grant-group", kind: "small quiet" })),
    ], { dataset: { groupId: group.id, name: group.name } })), { id: "group-table", empty: "No groups yet." }));
  }

  async function createUser() {
    const result = await action({
      title: "New user",
      fields: [
        { name: "email", label: "Email", type: "email", required: true },
        { name: "name", label: "Name", required: true },
        { name: "password", label: "Password", type: "password", required: true },
        { name: "role", label: "Role", type: "select", value: "user",
          options: [{ value: "user", label: "user" }, { value: "admin", label: "admin" }] },
      ],
      confirmLabel: "Create",
      run: (values) => post("api/admin/users", values),
      done: (answer, values) => `User ${values.email} created (id ${answer.id}).`,
    });
    if (result) await load();
  }

  async function editUser(user) {
    const result = await action({
      title: `Edit ${user.email}`,
      text: "Leave the password empty to keep it.",
      fields: [
        { name: "name", label: "Name", value: user.name, required: true },
        { name: "role", label: "Role", type: "select", value: user.role,
          options: [{ value: "user", label: "user" }, { value: "admin", label: "admin" }] },
        { name: "password", label: "New password", type: "password" },
      ],
      confirmLabel: "Save",
      run: (values) => {
        const body = {};
        if (values.name !== user.name) body.name = values.name;
        if (values.role !== user.role) body.role = values.role;
        if (values.password) body.password = values.password;
        return patch(`api/admin/users/${enc(user.id)}`, body);
      },
      done: (answer) => `User ${answer.email} saved.`,
    });
    if (result) await load();
  }

  async function setDisabled(user, disabled) {
    const result = await action({
      title: `${disabled ? "Disable" : "Enable"} ${user.email}`,
      text: disabled ? "Their sessions end at once; they cannot sign in until enabled again." : "They can sign in again.",
      confirmLabel: disabled ? "Disable" : "Enable",
      danger: disabled,
      run: () => patch(`api/admin/users/${enc(user.id)}`, { disabled }),
      done: (answer) => `User ${answer.email} ${disabled ? "disabled" : "enabled"}.`,
    });
    if (result) await load();
  }

  async function deleteUser(user) {
    const result = await action({
      title: `Delete ${user.email}`,
      text: "Their sessions and grants end. This cannot be undone.",
      confirmLabel: "Delete",
      danger: true,
      run: () => del(`api/admin/users/${enc(user.id)}`),
      done: () => `User ${user.email} deleted.`,
    });
    if (result) await load();
  }

  async function createGroup() {
    const result = await action({
      title: "New group",
      fields: [{ name: "name", label: "Name", required: true }],
      confirmLabel: "Create",
      run: (values) => post("api/admin/groups", values),
      done: (answer, values) => `Group ${values.name} created (id ${answer.id}).`,
    });
    if (result) await load();
  }

  async function addMember(group) {
    const candidates = known.users.filter((user) => !group.members.includes(user.id));
    const result = await action({
      title: `Add a member to ${group.name}`,
      fields: [candidates.length
        ? { name: "user_id", label: "User", type: "select", options: candidates.map((user) => ({ value: user.id, label: user.email })) }
        : { name: "user_id", label: "User id", required: true }],
      confirmLabel: "Add",
      run: (values) => post(`api/admin/groups/${enc(group.id)}/members`, { user_id: values.user_id }),
      done: (_, values) => `${known.users.find((u) => u.id === values.user_id)?.email || values.user_id} added to ${group.name}.`,
    });
    if (result) await load();
  }

  async function removeMember(group, userId) {
    const email = known.users.find((u) => u.id === userId)?.email || userId;
    const result = await action({
      title: `Remove ${email} from ${group.name}`,
      text: "They lose the group's grants.",
      confirmLabel: "Remove",
      danger: true,
      run: () => del(`api/admin/groups/${enc(group.id)}/members/${enc(userId)}`),
      done: () => `${email} removed from ${group.name}.`,
    });
    if (result) await load();
  }

  async function grantTo(target, label) {
    let options;
    try {
      options = await compartmentOptions();
    } catch (error) {
      options = [];
    }
    const result = await action({
      title: `Grant a compartment to ${label}`,
      fields: [
        options.length
          ? { name: "compartment", label: "Compartment", type: "select", options }
          : { name: "compartment", label: "Compartment id", required: true },
        { name: "expires_at", label: "Expires (optional)", type: "datetime-local" },
      ],
      confirmLabel: "Grant",
      run: (values) => {
        const body = { ...target };
        if (values.expires_at) body.expires_at = new Date(values.expires_at).toISOString();
        return post(`api/admin/compartments/${enc(values.compartment)}/grants`, body);
      },
      done: (_, values) => `Granted ${options.find((o) => o.value === values.compartment)?.label || values.compartment} to ${label}.`,
    });
    return result;
  }

  load();
  return () => {};
}
