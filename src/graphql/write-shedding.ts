import { type DocumentNode, getOperationAST, Kind, type ValueNode } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { type GraphQLContext, requireTenant } from './context.js';

/**
 * Sheds refused writes before their input is coerced. GraphQL coerces every variable of an
 * operation before any resolver runs, and for a call of many events that coercion (and the
 * copying it does) is most of what a call costs. A call that will be refused whatever its events
 * hold — the tenant's write rate is still spent, its buffer is full, the instance is stopping —
 * need not pay it: this decides the refusal from the number of events in the raw variables, hands
 * the events' variable to execution as an empty list, and the refusal as the root value, which
 * the createAuditEvents resolver answers as the typed member of its union (so the answer keeps
 * the shape the caller's selection asks for, and scope checks still come first).
 *
 * Only the common shape is shed: a mutation whose single root field is createAuditEvents with its
 * events in a variable. Anything else (inline events, several root fields) goes the ordinary way,
 * where WriteAdmission decides the same refusals before validating the events.
 */
export function useWriteShedding(): Plugin<GraphQLContext> {
  return {
    onExecute({ args, setExecuteFn, executeFn }) {
      const ctx = args.contextValue;
      const site = eventsVariable(args.document, args.operationName);
      if (!site) return;
      const variables = (args.variableValues ?? {}) as Record<string, unknown>;
      const events = site.read(variables);
      if (!Array.isArray(events)) return;
      let tenant: ReturnType<typeof requireTenant>;
      try {
        tenant = requireTenant(ctx);
      } catch {
        return; // refused as a request: the ordinary path says so
      }
      const refusal = ctx.services.useCases.admission.refusal(tenant, events.length);
      if (!refusal) return;
      // The refusal travels as this execution's root value: nothing another operation of the same
      // request (a batch) could see.
      const rootValue: RefusedWrite = { writeRefusal: refusal };
      const emptied = site.empty(variables);
      setExecuteFn((execArgs) => executeFn({ ...execArgs, rootValue, variableValues: emptied }));
    },
  };
}

/** The root value of a createAuditEvents execution refused before its input was read. */
export interface RefusedWrite {
  writeRefusal: Error;
}

interface EventsSite {
  /** The raw events list the call's variables hold. */
  read(variables: Record<string, unknown>): unknown;
  /** A copy of the variables with that list empty. */
  empty(variables: Record<string, unknown>): Record<string, unknown>;
}

/** Where the operation's createAuditEvents call takes its events from, when it is a variable. */
function eventsVariable(
  document: DocumentNode,
  operationName: string | null | undefined,
): EventsSite | null {
  const op = getOperationAST(document, operationName);
  if (op?.operation !== 'mutation' || op.selectionSet.selections.length !== 1) return null;
  const field = op.selectionSet.selections[0]!;
  if (field.kind !== Kind.FIELD || field.name.value !== 'createAuditEvents') return null;
  const input = field.arguments?.find((a) => a.name.value === 'input')?.value;
  if (!input) return null;
  if (input.kind === Kind.VARIABLE) {
    // input: $input — the events are the variable's `events`.
    const name = input.name.value;
    const object = (v: Record<string, unknown>) => v[name] as Record<string, unknown> | undefined;
    return {
      read: (v) => (isObject(object(v)) ? object(v)!.events : undefined),
      empty: (v) => ({ ...v, [name]: { ...object(v), events: [] } }),
    };
  }
  if (input.kind === Kind.OBJECT) {
    // input: { events: $events, … }
    const events: ValueNode | undefined = input.fields.find(
      (f) => f.name.value === 'events',
    )?.value;
    if (events?.kind !== Kind.VARIABLE) return null;
    const name = events.name.value;
    return { read: (v) => v[name], empty: (v) => ({ ...v, [name]: [] }) };
  }
  return null;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
