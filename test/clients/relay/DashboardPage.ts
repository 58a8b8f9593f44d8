/** Input for relay-compiler (test/clients-relay.test.ts): the dashboard page's query. */
const graphql = String.raw;

export const DashboardPageQuery = graphql`
  query DashboardPageQuery($filter: AuditEventFilter) {
    ...DashboardEvents_query @arguments(filter: $filter)
  }
`;
