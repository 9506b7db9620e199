-- Agent Gateway: the `user_profiles` table in a Supabase project (run it once in the SQL editor,
-- or save it as a migration: `supabase migration new user_profiles`). Idempotent.
--
-- The gateway reads and writes it with the service key (service_role bypasses row-level
-- security). A signed-in user may read their own allow-list and limit, never a key: the key
-- column is not granted to `authenticated`, and nobody but service_role may write.

create table if not exists public.user_profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  litellm_key_id text not null,                       -- the user's LiteLLM virtual key itself
  allowed_models text[],                              -- null: every model
  monthly_limit bigint check (monthly_limit >= 0),    -- tokens per UTC month; null: no limit
  created_at timestamptz not null default now()
);

alter table public.user_profiles enable row level security;

revoke all on table public.user_profiles from anon, authenticated;
grant select (id, allowed_models, monthly_limit, created_at) on table public.user_profiles to authenticated;
grant select, insert, update, delete on table public.user_profiles to service_role;

drop policy if exists "users read their own profile" on public.user_profiles;
create policy "users read their own profile" on public.user_profiles
  for select to authenticated
  using ((select auth.uid()) = id);
